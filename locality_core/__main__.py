import sys

from locality_core.cli.main import main

sys.exit(main())
