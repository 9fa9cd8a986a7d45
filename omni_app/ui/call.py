"""One action starts a video call (camera and microphone together) and one ends it.

gradio starts a webcam stream and a microphone stream only from their own buttons, so the
call buttons press those in the page: grant the webcam, start its stream, start the
page's live microphone (above the tabs); and to end, stop both and silence the reply.
The buttons are found by their classes and titles, not their (translated) labels.
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
  const camera = document.getElementById("video-camera");
  const mic = document.getElementById("live-mic");
  const grant = camera.querySelector('[title="grant webcam access"] button');
  if (grant) grant.click();
  const capture = await until(() => camera.querySelector(".capture-button"));
  if (capture && !capture.querySelector('[title="stop recording"]')) capture.click();
  const record = await until(() => mic.querySelector(".record-button"), 3000);
  if (record) record.click();
}
"""

#: Run in the page by "End call": the reply is silenced and both streams stop.
END_CALL_JS = """
() => {
  if (window.OmniSpeech) OmniSpeech.stop("video");
  const stop = document.querySelector("#live-mic .stop-button");
  if (stop) stop.click();
  const capture = document.querySelector("#video-camera .capture-button");
  if (capture && capture.querySelector('[title="stop recording"]')) capture.click();
}
"""
