"""Reading and writing: model directories and checkpoints, Kaldi tables, PyTorch files, converters.

checkpoint.py  the model directory (config + front-end + variables) and training checkpoints (orbax)
kaldi_io.py    Kaldi vector archives (ark/scp) and wav.scp tables
torchzip.py    PyTorch .pt state_dicts read and written without torch (and without running their code)
convert/       one module per checkpoint source (WeSpeaker), into model directories and back
export.py      deployable artifacts of a model directory: jax.export (.jax) and ONNX (.onnx), with their spec
"""
