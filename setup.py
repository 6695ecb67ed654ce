from setuptools import setup

# Everything else lives in pyproject.toml; setuptools needs setup.py only for cffi_modules.
setup(cffi_modules=["dtp_core/build_ffi.py:ffi"])
