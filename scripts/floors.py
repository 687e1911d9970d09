"""Print the lowest version of each dependency pyproject.toml allows, as pip constraints (`name==floor`).

`make test-min` installs these and runs tests/test_smoke.py, so every floor the project declares is one it was tested at.
"""

import re
import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as handle:
    dependencies = tomllib.load(handle)["project"]["dependencies"]
for requirement in dependencies:
    match = re.match(r"([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)", requirement)
    if match is None:
        sys.exit(f"{requirement!r}: every dependency needs a floor (>=) for `make test-min` to test")
    print(f"{match[1]}=={match[2]}")
