"""The demo recommendation model (`recsys_model`) and the parameter-server cluster that trains
it (`cluster`)."""
