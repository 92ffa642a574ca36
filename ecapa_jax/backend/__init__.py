"""The back-end: embeddings → trial scores → error rates and plots.

scoring.py   cosine scoring, mean subtraction, AS-norm; embedding and trial files
metrics.py   DET curve, EER and minDCF exactly as WeSpeaker; score files
plotting.py  DET curves, score histograms, training curves, embedding maps
"""
