"""The ``margin-softmax`` command line: ``compare``, ``train`` and ``eval`` (one file each)."""
