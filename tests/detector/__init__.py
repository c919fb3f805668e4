"""Tests of the detector package (OOD query detector, PRADA, aggregation, output policies)."""
