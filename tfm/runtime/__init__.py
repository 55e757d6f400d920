"""What runs kernels on devices and knows nothing of Transformers: device resolution and the compile context
(placement), placement over several devices, host<->device memory, the CPU kernels tfm compiles itself, replay of
captured steps, the compiled-program cache, tuned-kernel lookup, and every patch of tinygrad's behaviour (patches)."""
