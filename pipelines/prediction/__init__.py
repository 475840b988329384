"""Prediction: cases found from inputs, segmented one at a time (``Segmenter``) and
written on their input's grid."""
