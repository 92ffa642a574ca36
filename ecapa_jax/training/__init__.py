"""Training pieces that are pure functions or small modules: margin heads and schedules of the step.

    heads.py      margin heads (softmax, AAM, AM, A-softmax, sub-centre AAM, SphereFace2), HeadConfig
    schedules.py  WeSpeaker's learning-rate and margin schedules

The training loop itself, which needs data and devices, is the top-level ``train`` package.
"""
