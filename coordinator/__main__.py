"""`python -m coordinator` and the `coordinator` script.

Python turns SIGINT into KeyboardInterrupt, which during the first tenth of a second
(importing click, a backend's client library) printed a traceback. Until the
supervisor's own handlers are in place, Ctrl-C ends the program as it ends any other:
by the signal, silently (exit status 130 in the shell). Set here, not in
coordinator.cli, which tests and other programs import.
"""

import signal

if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored (nohup, &)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

from coordinator.cli import entry  # after the signal disposition


def main() -> None:
    entry()


if __name__ == "__main__":
    main()
