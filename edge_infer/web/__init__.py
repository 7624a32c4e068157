"""The live view (`[web]`): one small page served by the daemon — the latest frame with its result drawn on,
the last results and rejections with their reasons, health, drift, the model, and a chart of the last hour —
updated live over server-sent events, plus an MJPEG stream for Home Assistant's MJPEG camera.

Imported only when `[web] enabled = true`. While no one is watching it costs one reference per result (the
latest input is kept, not decoded) and a per-minute counter; frames are drawn and encoded only when asked for.
"""
