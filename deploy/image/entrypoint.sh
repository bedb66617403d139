#!/bin/sh
# The image's entrypoint: files pmsctl creates (the cursor and writeback databases, the event
# file sink, SQLite's journals) are readable by their owner only, whatever umask the runtime
# hands over. Everything else is pmsctl's own: exec, so it is PID 1 and gets SIGTERM itself.
umask 077
exec pmsctl "$@"
