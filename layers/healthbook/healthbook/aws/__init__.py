"""Adapters to AWS services. The only part of healthbook that may import boto3 (lazily), so the core never does."""
