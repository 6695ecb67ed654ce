"""PLACEHOLDER twin: to be implemented."""


class Reassembler: ...
