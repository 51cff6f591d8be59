"""The dbb_hf Space (``examples/space/app.py``), one module per concern:

- :mod:`.settings`: what the Space is configured with, read through dbb_hf's stage configs,
  and ``--tiny`` (a preset, like the recipes' ``--preset tiny``);
- :mod:`.models`: loading the classifier, detector + segmenter and inpainting pipeline once;
- :mod:`.edit`: one image masked, inpainted and scored, without the UI;
- :mod:`.uploads`: the checks an uploaded file passes before it is decoded;
- :mod:`.run_folder`: ``--run_dir``, the settings and examples a finished run's folder gives;
- :mod:`.page`: the Gradio page and ``main``.
"""
