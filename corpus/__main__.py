import sys

from corpus.fetch import main

sys.exit(main())
