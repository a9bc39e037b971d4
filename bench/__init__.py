"""`make bench`: the service end to end beside the floors that bound it (see __main__)."""
