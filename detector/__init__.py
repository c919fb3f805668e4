"""Defences against model extraction (Atli et al.'s OOD query detector, PRADA, output
policies): the next issues fill this package. Pure numpy/Keras, it never imports `serving`."""
