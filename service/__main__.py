import os
import sys

from service.cli import main

sys.exit(main(sys.argv[1:], os.environ))
