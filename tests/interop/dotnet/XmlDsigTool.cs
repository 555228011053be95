// Signs and verifies submissions with .NET's System.Security.Cryptography.Xml.SignedXml, the way HIS software
// built on .NET does it (tests/test_signature_interop.py compiles this with mcs and runs it under Mono).
//
// Usage: mono XmlDsigTool.exe JOBS   (one job per line, fields separated by tabs)
//   sign    IN  OUT  P12  PASSWORD  OPTIONS   OPTIONS: comma-separated, "-" for none:
//       exc-c14n       exclusive canonicalisation for SignedInfo and an exc-c14n transform after enveloped
//       chain=FILE     a further certificate (DER) in X509Data after the leaf, e.g. the intermediate CA
//       keyinfo-extra  X509SubjectName and X509IssuerSerial next to the certificate
//       signing-time   a second reference to a SigningTime element in the signature's own Object (DataObject)
//       outside        the signature appended to the root, not to CHUKYDONVI (a refusal case)
//   verify  IN                            SignedXml.CheckSignature() with the KeyInfo key
// Prints one line per job: "ok", "valid", "invalid" or "error <message>"; exits 0 once every job has run.
// The default form is what Microsoft's documentation shows: PreserveWhitespace, the signature appended as the
// last child of CHUKYDONVI, only the enveloped transform (C14N 1.0 implied), RSA-SHA256, SHA-256, X509Data.
using System;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Security.Cryptography.Xml;
using System.Text;
using System.Xml;

public static class XmlDsigTool
{
    static XmlDocument Load(string path)
    {
        var doc = new XmlDocument { PreserveWhitespace = true, XmlResolver = null };
        doc.Load(path);
        return doc;
    }

    static void Save(XmlDocument doc, string path)
    {
        // XmlDocument.Save writes a UTF-8 byte-order mark, as .NET HIS software does.
        using (var writer = XmlWriter.Create(path, new XmlWriterSettings { Encoding = new UTF8Encoding(true) }))
        {
            doc.Save(writer);
        }
    }

    static string Sign(string input, string output, string p12, string password, string[] options)
    {
        var collection = new X509Certificate2Collection();
        collection.Import(p12, password, X509KeyStorageFlags.Exportable);
        var leaf = collection.Cast<X509Certificate2>().First(c => c.HasPrivateKey);
        var doc = Load(input);
        var signed = new SignedXml(doc);
        AsymmetricAlgorithm key = leaf.GetRSAPrivateKey();
        if (key == null)
        {
            key = leaf.GetECDsaPrivateKey();
            signed.SignedInfo.SignatureMethod = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
        }
        else
        {
            signed.SignedInfo.SignatureMethod = SignedXml.XmlDsigRSASHA256Url;
        }
        signed.SigningKey = key;
        var reference = new Reference("") { DigestMethod = SignedXml.XmlDsigSHA256Url };
        reference.AddTransform(new XmlDsigEnvelopedSignatureTransform());
        if (options.Contains("exc-c14n"))
        {
            signed.SignedInfo.CanonicalizationMethod = SignedXml.XmlDsigExcC14NTransformUrl;
            reference.AddTransform(new XmlDsigExcC14NTransform());
        }
        signed.AddReference(reference);
        if (options.Contains("signing-time"))
        {
            var time = new XmlDocument();
            time.LoadXml("<SigningTime>2025-06-01T16:00:00+07:00</SigningTime>");
            signed.AddObject(new DataObject { Id = "signing-time", Data = time.ChildNodes });
            signed.AddReference(new Reference("#signing-time") { DigestMethod = SignedXml.XmlDsigSHA256Url });
        }
        var data = new KeyInfoX509Data(leaf);
        foreach (var option in options.Where(o => o.StartsWith("chain=")))
        {
            // Mono imports only the key's own certificate from a PKCS#12 file, so the chain comes as DER files.
            data.AddCertificate(new X509Certificate2(option.Substring("chain=".Length)));
        }
        if (options.Contains("keyinfo-extra"))
        {
            data.AddSubjectName(leaf.Subject);
            data.AddIssuerSerial(leaf.Issuer, leaf.SerialNumber);
        }
        var keyInfo = new KeyInfo();
        keyInfo.AddClause(data);
        signed.KeyInfo = keyInfo;
        signed.ComputeSignature();
        XmlNode parent = options.Contains("outside") ? doc.DocumentElement
            : doc.DocumentElement.SelectSingleNode("CHUKYDONVI");
        parent.AppendChild(doc.ImportNode(signed.GetXml(), true));
        Save(doc, output);
        return "ok";
    }

    static string Verify(string input)
    {
        var doc = Load(input);
        var nodes = doc.GetElementsByTagName("Signature", SignedXml.XmlDsigNamespaceUrl);
        if (nodes.Count != 1)
        {
            return "error " + nodes.Count + " signatures";
        }
        var signed = new SignedXml(doc);
        signed.LoadXml((XmlElement)nodes[0]);
        return signed.CheckSignature() ? "valid" : "invalid";
    }

    public static int Main(string[] args)
    {
        foreach (var line in File.ReadAllLines(args[0]).Where(l => l.Length > 0))
        {
            var f = line.Split('\t');
            string result;
            try
            {
                result = f[0] == "sign" ? Sign(f[1], f[2], f[3], f[4], f[5].Split(',')) : Verify(f[1]);
            }
            catch (Exception e)
            {
                result = "error " + e.GetType().Name + ": " + e.Message.Replace('\n', ' ');
            }
            Console.WriteLine(result);
        }
        return 0;
    }
}
