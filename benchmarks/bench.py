"""covseg's speed benchmark (same as ``covseg bench``): see ``covseg/bench.py``."""
from covseg.bench import main

raise SystemExit(main())
