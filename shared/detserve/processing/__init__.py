"""Pure pre- and post-processing: image decoding, letterbox, decoders, NMS."""
