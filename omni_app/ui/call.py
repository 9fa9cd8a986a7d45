"""One action starts a video call (camera and microphone together) and one ends it.

gradio starts a webcam stream only from its own buttons, so the call buttons press those in
the page (found by their classes and titles, not their translated labels): grant the webcam
and start its stream, and start the page's listener (above the tabs); to end, stop both and
silence the reply.
"""

#: Run in the page by "Start call". Also opens the page's audio (a user gesture is needed).
START_CALL_JS = """
async () => {
  const until = async (find, ms = 10000) => {
    for (const end = Date.now() + ms; Date.now() < end;) {
      const found = find();
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return null;
  };
  if (window.OmniSpeech) OmniSpeech.open();
  const listening = window.OmniListen ? OmniListen.start() : null;
  const camera = document.getElementById("video-camera");
  const grant = camera.querySelector('[title="grant webcam access"] button');
  if (grant) grant.click();
  const capture = await until(() => camera.querySelector(".capture-button"));
  if (capture && !capture.querySelector('[title="stop recording"]')) capture.click();
  await listening;
}
"""

#: Run in the page by "End call": the reply is silenced and both streams stop.
END_CALL_JS = """
() => {
  if (window.OmniSpeech) OmniSpeech.stop("video");
  if (window.OmniListen) OmniListen.stop();
  const capture = document.querySelector("#video-camera .capture-button");
  if (capture && capture.querySelector('[title="stop recording"]')) capture.click();
}
"""
