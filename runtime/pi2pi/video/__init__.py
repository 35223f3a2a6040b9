"""The video wing: V4L2 source, test pattern, framebuffer, camera, viewer."""
