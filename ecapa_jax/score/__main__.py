"""``python -m ecapa_jax.score``: the command line of `ecapa_jax.score.main` (a package, so that running it
does not execute the module a second time after ``import ecapa_jax`` has loaded it)."""

import sys

from ecapa_jax.score import main

sys.exit(main())
