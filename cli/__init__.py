"""The command line's room: the one headless ComfyUI host (``headless.py``; finding a host in ``hostfind.py``, its
output as text in ``hostreport.py``, its server stand-in ``hostserver.py``), the shipped API graphs (``graphs.py``),
the argument checks and the flag rule (``cli_checks.py``, ``cli_flags.py``), the weight files (``weights.py``) and the
registration of the pack folder under one fixed name (``bootstrap.py``). Used by ``generate.py``, ``train.py``,
``convert.py``, ``bench/`` and the tests; never by ``nodes/`` (the runtime inside ComfyUI)."""
