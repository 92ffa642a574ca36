"""``python -m ecapa_jax.metrics``: the command line of `ecapa_jax.metrics.main` (a package, so that running it
does not execute the module a second time after ``import ecapa_jax`` has loaded it)."""

import sys

from ecapa_jax.metrics import main

sys.exit(main())
