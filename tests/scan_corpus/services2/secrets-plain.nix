# git-crypt'ed in the real repository; plain here.
{
  wordpress = "Wp-Plain-59";
  smtp = "Smtp-Plain-60";
  backblaze = {
    keyId = "0045fake000000000000000001";
    applicationKey = "K004FakeApplicationKey0000000";
  };
}
