"""A stand-in for scaling.engine.Stop that reports SIGTERM after a number of checks (a kill between chunks)."""


class StopAfter:
    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signal(self):
        self.calls += 1
        return "SIGTERM" if self.calls > self.n else None
