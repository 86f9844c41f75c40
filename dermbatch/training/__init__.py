"""Training, evaluation and scheduled retraining of HAM10000 classifiers.

Every module here reuses `dermbatch.model.preprocess`, so a trained model sees the same
pixels at training time as the workers give it at inference time.
"""
