"""Transfer workflows: the parallel copier, the ImageTransfer session,
upload/download of disks, and transfers straight to an imageio URL.

    copier.copy(src, dst, CopyOptions(workers=4)) # any Backend to any Backend
    disk.send(conn, source, disk, DiskOptions(...)) -> Sent    # every workflow's
    disk.receive(conn, disk, new_backend, DiskOptions(...)) -> Received  # one transfer
    upload.upload_disk(conn, path, storage_domain, UploadOptions(...)) -> Disk
    download.download_disk(conn, disk, path, DownloadOptions(...)) -> TransferResult
    (options.UploadOptions / DownloadOptions; their fields work as keywords too)
    urls.upload_url(path, url) / urls.download_url(url, path)
"""
