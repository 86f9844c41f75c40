"""Training, evaluation and scheduled retraining of HAM10000 classifiers.

Every module here reuses `dermbatch.model.preprocess`, so a model is trained on the same
pixels that the workers pass to it at inference time.
"""
