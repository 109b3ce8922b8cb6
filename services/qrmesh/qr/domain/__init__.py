"""Pure QR logic: payload encoding and rendering. No I/O."""
