"""The networks codecs run at run time, apart from how they were trained.

``nets.pnc`` and ``nets.entropic`` are torch modules (PNC's decoder, the
entropic student, factorized prior and CR+BQ) that the edge rebuilds from an
artifact's weights; ``nets.common`` is what they share. ``nets.adacompress``
is AdaCompress's Q-network agent, plain numpy, that a client runs and keeps
training online. The torch modules import torch at module level, so runtime
codec modules import them inside the functions that need them; training
lives in :mod:`hilbed.nodes.codecs.fitting`.
"""
