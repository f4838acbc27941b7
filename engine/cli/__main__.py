import sys

from rollout_engine.engine.cli import main

sys.exit(main())
