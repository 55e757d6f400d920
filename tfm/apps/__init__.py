"""What people use tfm for: the translator and text files, the image classifier, attention pictures, the comparison
of backends against the float64 oracle, the kernel tuner and the HTTP server."""
