"""On-device training: the tape (forward keeping what backward needs, reverse-mode gradients through each
op's ``backward``), losses, optimizers, initializers and the :class:`Trainer`."""
from .init import initialize
from .losses import MSE, BCEWithLogits, Loss, SoftmaxCrossEntropy
from .optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm, cosine_lr, make_optimizer, step_lr, warmup
from .tape import Tape
from .trainer import EarlyStopping, History, Trainer, parameter_layers, select_trainable

__all__ = ["Tape", "Trainer", "History", "EarlyStopping", "select_trainable", "parameter_layers", "initialize",
           "Loss", "SoftmaxCrossEntropy", "MSE", "BCEWithLogits", "Optimizer", "SGD", "Adam", "AdamW",
           "clip_grad_norm", "cosine_lr", "step_lr", "warmup", "make_optimizer"]
