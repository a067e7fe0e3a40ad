"""`python -m manta_lab.apis --home <lab home>`: the lab's SAPI, IMGAPI and VMAPI."""
import sys

from .server import main

sys.exit(main())
