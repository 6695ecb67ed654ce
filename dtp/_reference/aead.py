"""PLACEHOLDER twin: to be implemented."""


class Aead: ...
