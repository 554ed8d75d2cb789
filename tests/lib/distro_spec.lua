-- The Debian image the distro tier and `make bench` boot: one spec, one
-- cached image (qemu.image.build keys its cache by these inputs).
return {
  suite = "bookworm", packages = { "cloud-init" }, root_password = "qshell", hostname = "qsdeb",
  users = { { name = "alice", password = "wonder land", groups = { "sudo", "adm" } } },
}
