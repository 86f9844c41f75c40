"""Jobs: listing a source, recording a job and its images, and handing out batches."""
