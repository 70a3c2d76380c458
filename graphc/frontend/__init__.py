"""From a PyTorch model to a cost graph: tracing (:mod:`tracing`, :mod:`functionalize`, :mod:`leaf`),
cost annotation (:mod:`annotate`, :mod:`flops`), profiling on a real device (:mod:`profile`) and the
benchmark network zoo (:mod:`zoo`). Imports only :mod:`graphc.ir` of the project (see ARCHITECTURE.md)."""
