"""Built-in decoders (model heads), each registered under the `detserve.decoders` entry point."""
