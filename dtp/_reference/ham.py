"""PLACEHOLDER twin: to be implemented."""


class HamGraph: ...


def decode_ham_batch(*a, **k):
    raise NotImplementedError


encode_ham_batch = decode_ham_batch
