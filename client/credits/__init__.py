"""Generated code of the credits.v1 contract (make proto); do not edit."""
