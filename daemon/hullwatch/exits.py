"""Exit codes (sysexits, ICD §1) and what every subcommand does before it starts: read its configuration.

The subcommands (`cli`, `report`, `watch`, `service`) import these from here, so none of them
imports another to learn how to fail.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hullwatch import config

EX_OK = 0
EX_USAGE = 64  # the command line is wrong
EX_DATAERR = 65  # the input data is wrong
EX_NOINPUT = 66  # an input file is missing or unreadable
EX_UNAVAILABLE = 69  # a service or device is not there (a broker, a GPIO pin, an optional package)
EX_SOFTWARE = 70  # an internal error
EX_CANTCREAT = 73  # an output cannot be created
EX_IOERR = 74  # an input/output error
EX_CONFIG = 78  # the configuration is wrong


def load_config(path: str | None, load: Callable[[str], Any] = config.load) -> Any:
    """The config (as `load` reads it), or EX_CONFIG after printing what is wrong, one line per problem."""
    path = config.config_path(path)
    try:
        return load(path)
    except FileNotFoundError:
        print(f"{path}: configuration file not found", file=sys.stderr)
        return EX_CONFIG
    except IsADirectoryError:
        print(f"{path}: is a directory, not a configuration file", file=sys.stderr)
        return EX_CONFIG
    except PermissionError:
        print(f"{path}: permission denied", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:  # a path that is too long, a loop of links, an I/O error ...
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EX_CONFIG
    except config.ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EX_CONFIG
