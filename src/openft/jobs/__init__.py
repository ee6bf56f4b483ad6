"""Job lifecycle: the state machine, the worker loop and the runner of training subprocesses."""
