"""``python -m probinf`` runs the command-line interface."""

from probinf.cli import main

raise SystemExit(main())
