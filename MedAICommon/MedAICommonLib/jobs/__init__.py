"""Heavy work in a worker process: the worker, scene jobs that exchange files with MRML, failure messages."""
