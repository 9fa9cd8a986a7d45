"""Many users: the model server scaled out on Ray Serve (``python -m omni_app serve --ray``).

One HTTP endpoint with the same OpenAI-compatible API as ``python -m omni_app serve``, in
front of several copies of the model:

- :mod:`.replica`: one loaded model per Ray Serve replica (``num_gpus: 1`` on GPUs);
- :mod:`.backend`: the :class:`~omni_app.api.Backend` the endpoint serves, which hands each
  request to a replica through a deployment handle and streams its events back;
- :mod:`.router`: which replica: a conversation stays where it was served (its cache is
  warm there) unless another replica holds fewer requests;
- :mod:`.deployment`: the Serve application (:func:`~.deployment.build`, also the
  ``import_path`` of ``deploy/ray-serve.yaml``) and :mod:`.command`, the command.

Ray is an optional extra (``requirements-ray.txt``): nothing outside this package imports it.
"""
