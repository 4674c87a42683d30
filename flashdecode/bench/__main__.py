"""`python -m flashdecode.bench --case JSON`: the case process that `flashdecode bench` starts for each case."""
import sys

from .measure import case_main

if len(sys.argv) == 3 and sys.argv[1] == "--case":
    case_main(sys.argv[2])
else:
    sys.exit("usage: python -m flashdecode.bench --case JSON (an internal entry point of `flashdecode bench`)")
