"""Scaling-law analysis: tables in, fitted laws, intervals and figures out. Imports no JAX and no training code."""
