"""``python -m omni_app space build|push``: the command-line side of :mod:`omni_app.space`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import ROOT


def add_parser(sub) -> None:
    """Add ``space build`` and ``space push`` to the command line's subcommands."""
    space = sub.add_parser("space", help="make and upload a Hugging Face Space of the app (see the Spacefile)",
                           description="Turn the Spacefile into a Hugging Face Space folder, and upload it.")
    actions = space.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="write a complete Space folder from a Spacefile",
                               description="Write a complete Space folder: README.md with the Space's settings, "
                                           "pinned requirements, the app and its Spacefile.")
    build.add_argument("out", type=Path, metavar="OUT", help="the folder to write (new, empty, or an earlier build)")
    build.add_argument("--spacefile", type=Path, default=ROOT / "Spacefile", metavar="F",
                       help="the Spacefile to build from (default: the Spacefile of this repository)")
    push = actions.add_parser("push", help="upload a built Space folder to the Hugging Face Hub",
                              description="Create the Space if needed and upload the folder (token from HF_TOKEN "
                                          "or the saved Hugging Face login). The Space then holds exactly the "
                                          "folder's files.")
    push.add_argument("out", type=Path, metavar="OUT", help="a folder written by `space build`")
    push.add_argument("--repo", required=True, metavar="USER/NAME", help="the Space to create or update")
    push.add_argument("--private", action="store_true", help="make a new Space private")


def run(args: argparse.Namespace) -> int:
    """Run ``space build`` or ``space push``; errors are raised as :class:`~omni_app.errors.OmniError`."""
    if args.space_command == "build":
        return _build(args)
    return _push(args)


def _build(args) -> int:
    from .build import ZERO_GPU_TORCH_PIN, build_space

    built = build_space(args.out, args.spacefile)
    space = built.spacefile
    torch = next(r for r in built.requirements if r.startswith("torch=="))
    print(f"wrote {built.folder}: {len(built.files)} files, {space.checkpoint} on {space.hardware}, {torch}")
    if space.is_zero_gpu:
        budget = space.gpu_budget()
        print(f"ZeroGPU: torch {ZERO_GPU_TORCH_PIN}, up to {budget.cap} s of GPU time per reply "
              f"({space.zero_gpu.size} GPU)")
    sys.stdout.flush()
    for warning in _warnings(space):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    print(f"next: python -m omni_app space push {built.folder} --repo USER/NAME")
    return 0


def _push(args) -> int:
    from .push import push_space
    from .spacefile import load_spacefile

    url = push_space(args.out, args.repo, private=args.private)
    space = load_spacefile(args.out / "Spacefile")
    print(f"uploaded to {url}")
    if space.is_zero_gpu:
        print("In the Space's Settings, choose the hardware ZeroGPU (it is not set from the files).")
    elif space.suggested_hardware not in (None, "cpu-basic"):
        print(f"In the Space's Settings, choose the hardware {space.suggested_hardware} (a paid upgrade).")
    return 0


def _warnings(space) -> list[str]:
    # The longest reply the limits allow, after the longest video: may it outrun the GPU time asked for?
    if not space.is_zero_gpu:
        return []
    from ..zerogpu import longest_speech

    budget, limits = space.gpu_budget(), space.generation_limits()
    needed = budget.estimate(space.limits.video_seconds, 0, limits.max_new_tokens, longest_speech(limits))
    if needed <= budget.cap:
        return []
    return [f"the longest reply the limits allow may need about {needed:.0f} s of GPU time, more than "
            f"zero_gpu.gpu_seconds ({budget.cap}); ZeroGPU may stop such a reply before its end. Lower "
            "limits.speech_seconds or limits.reply_tokens, or raise zero_gpu.gpu_seconds."]
